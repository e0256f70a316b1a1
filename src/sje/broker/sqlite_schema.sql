-- SJE's store in one SQLite file (sje.broker.sqlite). Run whole, inside one BEGIN IMMEDIATE, by
-- the first process that opens a file without it; every statement is idempotent.
-- Times are epoch milliseconds of the host clock. A task's index is its number, or -1 for the
-- reduce step ('r' in task ids "<job>:<index>"). Rows of a job (tasks, queue entries, leases,
-- retries, events, logs, idempotency key) go with it: ON DELETE CASCADE.

-- schema_version, and the counters every process shares: seq (queue order), dlq_seq (dead-letter
-- arrival order), ev_ms / ev_n (the last event id), gev_count (rows in global_events); relay: 1
-- once enable_relay was called (transitions then fill the outbox)
CREATE TABLE IF NOT EXISTS meta (
  name TEXT PRIMARY KEY,
  value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES
  ('schema_version', 2), ('seq', 0), ('dlq_seq', 0), ('ev_ms', 0), ('ev_n', 0), ('gev_count', 0),
  ('relay', 0);

-- spec: the planner's fields (JSON object of strings), as submitted; the columns before
-- 'state' repeat the ones transitions need. expires_at: result-ttl after the job ended (NULL
-- while it runs); an expired job is gone for every read and deleted by the scheduler tick.
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  spec TEXT NOT NULL,
  name TEXT NOT NULL,
  task TEXT NOT NULL,
  reduce TEXT NOT NULL,
  queue TEXT NOT NULL,
  priority INTEGER NOT NULL,
  n INTEGER NOT NULL,
  result_ttl_ms INTEGER NOT NULL,
  idem TEXT NOT NULL,
  state TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  started_at INTEGER,
  finished_at INTEGER,
  error TEXT,
  remaining INTEGER NOT NULL,
  c_queued INTEGER NOT NULL,
  c_running INTEGER NOT NULL DEFAULT 0,
  c_retrying INTEGER NOT NULL DEFAULT 0,
  c_succeeded INTEGER NOT NULL DEFAULT 0,
  c_failed INTEGER NOT NULL DEFAULT 0,
  c_dead INTEGER NOT NULL DEFAULT 0,
  c_cancelled INTEGER NOT NULL DEFAULT 0,
  deadline INTEGER,
  expires_at INTEGER,
  ev_count INTEGER NOT NULL DEFAULT 0,
  log_n INTEGER NOT NULL DEFAULT 0,
  log_bytes INTEGER NOT NULL DEFAULT 0,
  log_dropped INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, id);
CREATE INDEX IF NOT EXISTS jobs_active ON jobs (created_at, id)
  WHERE state IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS jobs_deadline ON jobs (deadline, id) WHERE deadline IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;
-- jobs whose event stream the scheduler tick should cut back to the newest 10,000
CREATE INDEX IF NOT EXISTS jobs_events_over ON jobs (id) WHERE ev_count > 11000;

-- t: when the task became ready, or when its attempt started (running); worker and duration:
-- of the last attempt. error: the last one (kept after a successful retry, as on Redis).
CREATE TABLE IF NOT EXISTS tasks (
  job TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  idx INTEGER NOT NULL,
  state TEXT NOT NULL DEFAULT 'queued',
  attempts INTEGER NOT NULL DEFAULT 0,
  redeliveries INTEGER NOT NULL DEFAULT 0,
  input BLOB,
  result BLOB,
  error BLOB,
  t INTEGER,
  worker TEXT,
  duration INTEGER,
  PRIMARY KEY (job, idx)
);

-- ready tasks; a queue is read in (score, member) order: score = (9 - priority) * 10^13 + seq,
-- and seq 0 for tasks handed back or redelivered (the front of their priority)
CREATE TABLE IF NOT EXISTS ready (
  job TEXT NOT NULL,
  idx INTEGER NOT NULL,
  queue TEXT NOT NULL,
  score INTEGER NOT NULL,
  member TEXT NOT NULL,
  PRIMARY KEY (job, idx),
  FOREIGN KEY (job, idx) REFERENCES tasks (job, idx) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS ready_order ON ready (queue, score, member);

-- the relay's outbox (sje.broker.sqlite_relay): ids "<job>:<index>" of tasks that became ready,
-- claimable from visible_at on (a submit's are held, a claimed one hidden for the claim's hold).
-- No foreign key: an entry whose task is no longer ready is dropped when claimed, and the
-- entries of a job go when it ends or is pruned.
CREATE TABLE IF NOT EXISTS outbox (
  member TEXT PRIMARY KEY,
  visible_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_visible ON outbox (visible_at, member);

-- retries waiting for their backoff
CREATE TABLE IF NOT EXISTS delayed (
  job TEXT NOT NULL,
  idx INTEGER NOT NULL,
  due INTEGER NOT NULL,
  member TEXT NOT NULL,
  PRIMARY KEY (job, idx),
  FOREIGN KEY (job, idx) REFERENCES tasks (job, idx) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS delayed_due ON delayed (due, member);

-- running tasks: owning worker and lease deadline
CREATE TABLE IF NOT EXISTS leases (
  job TEXT NOT NULL,
  idx INTEGER NOT NULL,
  worker TEXT NOT NULL,
  deadline INTEGER NOT NULL,
  member TEXT NOT NULL,
  PRIMARY KEY (job, idx),
  FOREIGN KEY (job, idx) REFERENCES tasks (job, idx) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS leases_deadline ON leases (deadline, member);

-- every queue a job was submitted to, with its depth (rows in ready), kept by the triggers
CREATE TABLE IF NOT EXISTS queues (
  name TEXT PRIMARY KEY,
  depth INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS ready_added AFTER INSERT ON ready BEGIN
  UPDATE queues SET depth = depth + 1 WHERE name = NEW.queue;
END;
CREATE TRIGGER IF NOT EXISTS ready_removed AFTER DELETE ON ready BEGIN
  UPDATE queues SET depth = depth - 1 WHERE name = OLD.queue;
END;

-- a job's events: eid = ms * 1,000,000 + n for the id "<ms>-<n>"; fields: JSON object (type
-- first). ev: in the job's stream; jev: in its job-level stream (job.* events).
CREATE TABLE IF NOT EXISTS job_events (
  job TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  eid INTEGER NOT NULL,
  fields BLOB NOT NULL,
  ev INTEGER NOT NULL DEFAULT 1,
  jev INTEGER NOT NULL,
  PRIMARY KEY (job, eid)
) WITHOUT ROWID;

-- the global stream (job events of every job, task failures and retries, worker events)
CREATE TABLE IF NOT EXISTS global_events (
  eid INTEGER PRIMARY KEY,
  fields BLOB NOT NULL
);

-- counters for /metrics (docs/monitor.md, same field names as P:stats)
CREATE TABLE IF NOT EXISTS stats (
  field TEXT PRIMARY KEY,
  value INTEGER NOT NULL
) WITHOUT ROWID;

-- tasks done per 10-second slot; field '<queue>|s' or '<queue>|f'; kept 2 h
CREATE TABLE IF NOT EXISTS throughput (
  slot INTEGER NOT NULL,
  field TEXT NOT NULL,
  value INTEGER NOT NULL,
  PRIMARY KEY (slot, field)
) WITHOUT ROWID;

-- info NULL: heartbeats of a worker that is not registered; due NULL once marked lost;
-- hb: when its last worker.heartbeat event was written
CREATE TABLE IF NOT EXISTS workers (
  id TEXT PRIMARY KEY,
  info TEXT,
  seen INTEGER NOT NULL,
  due INTEGER,
  lost INTEGER,
  stats TEXT,
  hb INTEGER
);

-- entry: the JSON the API shows; raw: the queue entry of an orphan (never written here:
-- foreign keys keep queue entries from naming no task)
CREATE TABLE IF NOT EXISTS dead_letters (
  id TEXT PRIMARY KEY,
  seq INTEGER NOT NULL,
  entry BLOB NOT NULL,
  raw BLOB
);
CREATE INDEX IF NOT EXISTS dead_letters_seq ON dead_letters (seq);

-- what each attempt printed and logged: JSON {"text", "truncated"}
CREATE TABLE IF NOT EXISTS logs (
  job TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  idx TEXT NOT NULL,
  attempt INTEGER NOT NULL,
  value BLOB NOT NULL,
  PRIMARY KEY (job, idx, attempt)
);

CREATE TABLE IF NOT EXISTS idempotency (
  key TEXT PRIMARY KEY,
  job TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_job ON idempotency (job);

CREATE TABLE IF NOT EXISTS shared_values (
  name TEXT PRIMARY KEY,
  value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS task_catalog (
  name TEXT PRIMARY KEY,
  defaults TEXT NOT NULL
);
