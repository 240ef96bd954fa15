-- ARGV: generation, rank, iteration, has_decision ('1'/'0'), epoch, metrics JSON,
-- issue_until, known_spec_hash, known_changes, check incarnation ('1'/'0'),
-- incarnation, finished_at ('0': not finished), held_until (the plan end the rank
-- holds, checked by the service; '0': none).
-- (job.lua's read_job and write_children are prepended.)
-- The job's fields this script decides on, in one read (a missing job: all nil).
local job = redis.call('HMGET', KEYS[1], 'generation', 'incarnation', 'world_size',
  'issued_until', 'held_until', 'finished_at', 'spec_hash')
local generation = job[1]
if not generation then return {'missing'} end
if ARGV[10] == '1' then
  local incarnation = job[2] or ''
  if incarnation ~= ARGV[11] then return {'incarnation', incarnation} end
end
if tonumber(generation) ~= tonumber(ARGV[1]) then return {'stale', generation} end
local world_size = job[3]
if tonumber(world_size) > 0 and tonumber(ARGV[2]) >= tonumber(world_size) then
  return {'rank', world_size}
end
local done = redis.call('HGET', KEYS[2], ARGV[2])
if (not done) or tonumber(done) < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
if ARGV[4] == '1' then redis.call('HSETNX', KEYS[3], ARGV[5], ARGV[6]) end
if tonumber(job[4]) < tonumber(ARGV[7]) then
  redis.call('HSET', KEYS[1], 'issued_until', ARGV[7])
end
if tonumber(job[5] or '0') < tonumber(ARGV[13]) then
  redis.call('HSET', KEYS[1], 'held_until', ARGV[13])
end
redis.call('HINCRBY', KEYS[1], 'version', 1)
if tonumber(ARGV[12]) > 0 and tonumber(job[6] or '0') == 0 then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[12])
end
local with_spec = ARGV[8] == '' or job[7] ~= ARGV[8]
return {'ok', read_job(with_spec, tonumber(ARGV[9]))}
