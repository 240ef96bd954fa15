-- KEYS: the job, its keyframe. ARGV: incarnation, generation, iteration, data.
local job = redis.call('HMGET', KEYS[1], 'incarnation', 'generation')
if not job[2] or (job[1] or '') ~= ARGV[1] or job[2] ~= ARGV[2] then return 0 end
local kept = redis.call('HMGET', KEYS[2], 'incarnation', 'generation', 'iteration')
if kept[1] == ARGV[1] and kept[2] == ARGV[2] and tonumber(kept[3]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[2], 'incarnation', ARGV[1], 'generation', ARGV[2],
           'iteration', ARGV[3], 'data', ARGV[4])
return 1
