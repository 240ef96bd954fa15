-- ARGV: generation, rank, iteration, has_decision ('1'/'0'), epoch, metrics JSON,
-- issue_until, known_spec_hash, known_changes, check incarnation ('1'/'0'),
-- incarnation, has_keyframe ('1'/'0'), keyframe incarnation, iteration, data,
-- finished_at ('0': not finished), held_until (the plan end the rank holds, checked by
-- the service; '0': none).
-- KEYS[6]: the keyframe (written like save_keyframe.lua, in the same round trip).
-- (job.lua's read_job and write_children are prepended.)
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
if ARGV[10] == '1' then
  local incarnation = redis.call('HGET', KEYS[1], 'incarnation') or ''
  if incarnation ~= ARGV[11] then return {'incarnation', incarnation} end
end
local generation = redis.call('HGET', KEYS[1], 'generation')
if tonumber(generation) ~= tonumber(ARGV[1]) then return {'stale', generation} end
local world_size = redis.call('HGET', KEYS[1], 'world_size')
if tonumber(world_size) > 0 and tonumber(ARGV[2]) >= tonumber(world_size) then
  return {'rank', world_size}
end
local done = redis.call('HGET', KEYS[2], ARGV[2])
if (not done) or tonumber(done) < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
if ARGV[4] == '1' then redis.call('HSETNX', KEYS[3], ARGV[5], ARGV[6]) end
if tonumber(redis.call('HGET', KEYS[1], 'issued_until')) < tonumber(ARGV[7]) then
  redis.call('HSET', KEYS[1], 'issued_until', ARGV[7])
end
if tonumber(redis.call('HGET', KEYS[1], 'held_until') or '0') < tonumber(ARGV[17]) then
  redis.call('HSET', KEYS[1], 'held_until', ARGV[17])
end
redis.call('HINCRBY', KEYS[1], 'version', 1)
if ARGV[12] == '1' and ARGV[13] == (redis.call('HGET', KEYS[1], 'incarnation') or '') then
  local kept = redis.call('HMGET', KEYS[6], 'incarnation', 'generation', 'iteration')
  if not (kept[1] == ARGV[13] and kept[2] == generation
          and tonumber(kept[3]) >= tonumber(ARGV[14])) then
    redis.call('HSET', KEYS[6], 'incarnation', ARGV[13], 'generation', generation,
               'iteration', ARGV[14], 'data', ARGV[15])
  end
end
if tonumber(ARGV[16]) > 0 and tonumber(redis.call('HGET', KEYS[1], 'finished_at') or '0') == 0 then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[16])
end
local with_spec = ARGV[8] == '' or redis.call('HGET', KEYS[1], 'spec_hash') ~= ARGV[8]
return {'ok', read_job(with_spec, tonumber(ARGV[9]))}
