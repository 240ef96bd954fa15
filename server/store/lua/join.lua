-- ARGV: run_id, world_size, rank, issue_until, the new run's audit entry ('' for none).
-- (job.lua's read_job and write_children are prepended.)
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local function record_rank()
  redis.call('HSETNX', KEYS[2], ARGV[3], '0')
  if tonumber(redis.call('HGET', KEYS[1], 'issued_until')) < tonumber(ARGV[4]) then
    redis.call('HSET', KEYS[1], 'issued_until', ARGV[4])
  end
  redis.call('HINCRBY', KEYS[1], 'version', 1)
end
local world_size = redis.call('HGET', KEYS[1], 'world_size')
if (redis.call('HGET', KEYS[1], 'run_id') or '') == ARGV[1] then
  if tonumber(ARGV[2]) > 0 and tonumber(world_size) > 0
      and tonumber(world_size) ~= tonumber(ARGV[2]) then
    return {'world', world_size}
  end
  if tonumber(world_size) > 0 and tonumber(ARGV[3]) >= tonumber(world_size) then
    return {'rank', world_size}
  end
  if tonumber(world_size) == 0 then redis.call('HSET', KEYS[1], 'world_size', ARGV[2]) end
  record_rank()
  return {'joined', read_job(true, -1)}
end
if redis.call('HLEN', KEYS[3]) > 0 then return {'resume_required', read_job(true, -1)} end
for _, done in ipairs(redis.call('HVALS', KEYS[2])) do
  if tonumber(done) > 0 then return {'resume_required', read_job(true, -1)} end
end
redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'world_size', ARGV[2], 'resumed_from', '',
           'finished_at', '0', 'held_until', '0')
redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('DEL', KEYS[2])
record_rank()
if ARGV[5] ~= '' then redis.call('RPUSH', KEYS[5], ARGV[5]) end
return {'new_run', read_job(true, -1)}
