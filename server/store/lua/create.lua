-- ARGV: spec, spec_hash, generation, version, world_size, created_at, issued_until,
-- resumed_from, incarnation, run_id, then write_children's arguments from ARGV[11].
-- (job.lua's read_job and write_children are prepended.)
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, read_job(true, -1)} end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'spec_hash', ARGV[2], 'generation', ARGV[3],
  'version', ARGV[4], 'world_size', ARGV[5], 'created_at', ARGV[6],
  'issued_until', ARGV[7], 'resumed_from', ARGV[8], 'incarnation', ARGV[9], 'run_id', ARGV[10])
write_children(11)
return {1}
