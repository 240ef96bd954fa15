-- ARGV: generation, rank, iteration, has_decision ('1'/'0'), epoch, metrics JSON,
-- issue_until, known_spec_hash, known_changes, check incarnation ('1'/'0'),
-- incarnation, finished_at ('0': not finished), held_until (the plan end the rank
-- holds, checked by the service; '0': none), then (rank, iteration) pairs of other
-- ranks recorded in the same write.
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
-- The (rank, iteration) pairs: ARGV[2], ARGV[3], then any after ARGV[13] (other ranks
-- of one group commit); all are checked before anything is written.
local ranks = {ARGV[2], ARGV[3]}
for i = 14, #ARGV - 1, 2 do
  ranks[#ranks + 1] = ARGV[i]
  ranks[#ranks + 1] = ARGV[i + 1]
end
local world_size = tonumber(job[3])
if world_size > 0 then
  for i = 1, #ranks, 2 do
    if tonumber(ranks[i]) >= world_size then return {'rank', job[3], ranks[i]} end
  end
end
for i = 1, #ranks, 2 do
  local done = redis.call('HGET', KEYS[2], ranks[i])
  if (not done) or tonumber(done) < tonumber(ranks[i + 1]) then
    redis.call('HSET', KEYS[2], ranks[i], ranks[i + 1])
  end
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
