from sje.cli import main

main()
