-- ARGV: P, task_id, worker_id, result_json
return complete_task(ARGV[2], ARGV[3], ARGV[4])
