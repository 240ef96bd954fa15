-- ARGV: spec, spec_hash, min_generation, state_hash, world_size, created_at,
-- issued_until, resume audit entry ('' for none), run_id, incarnation (for a new
-- job), n changes, the changes, n audit entries to restore, those entries, then
-- write_children's arguments.
-- (job.lua's read_job and write_children are prepended.)
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'resumed_from') == ARGV[4] then
    return {0, read_job(true, -1)}
  end
  -- generation = max(stored + 1, min_generation), without formatting a Lua number.
  if tonumber(redis.call('HGET', KEYS[1], 'generation')) >= tonumber(ARGV[3]) then
    redis.call('HINCRBY', KEYS[1], 'generation', 1)
  else
    redis.call('HSET', KEYS[1], 'generation', ARGV[3])
  end
  redis.call('HINCRBY', KEYS[1], 'version', 1)
else
  redis.call('HSET', KEYS[1], 'generation', ARGV[3], 'version', '1', 'created_at', ARGV[6],
    'incarnation', ARGV[10])
end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'spec_hash', ARGV[2], 'issued_until', ARGV[7],
  'resumed_from', ARGV[4], 'run_id', ARGV[9], 'finished_at', '0', 'held_until', '0')
if tonumber(ARGV[5]) > 0 or redis.call('HEXISTS', KEYS[1], 'world_size') == 0 then
  redis.call('HSET', KEYS[1], 'world_size', ARGV[5])
end
local i = 11
local n = tonumber(ARGV[i])
redis.call('DEL', KEYS[4])
for j = 1, n do redis.call('RPUSH', KEYS[4], ARGV[i + j]) end
i = i + n + 1
n = tonumber(ARGV[i])
if redis.call('EXISTS', KEYS[5]) == 0 then
  for j = 1, n do redis.call('RPUSH', KEYS[5], ARGV[i + j]) end
end
if ARGV[8] ~= '' then redis.call('RPUSH', KEYS[5], ARGV[8]) end
write_children(i + n + 1)
return {1, read_job(true, -1)}
