-- ARGV: the deletion's audit entry ('' for none), finished_before ('' for none). The
-- audit list stays.
if ARGV[2] ~= '' then
  local finished = tonumber(redis.call('HGET', KEYS[1], 'finished_at') or '0')
  if finished <= 0 or finished > tonumber(ARGV[2]) then return 0 end
end
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6])
if existed == 1 and ARGV[1] ~= '' then redis.call('RPUSH', KEYS[5], ARGV[1]) end
return existed
