-- ARGV: P, task_id, worker_id, result_json
return complete_tasks(ARGV[3], {ARGV[2]}, {ARGV[4]})[1]
