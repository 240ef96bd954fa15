-- A Lua helper prepended to every script that returns a record. KEYS[1..5] are the
-- job, progress, decisions, changes and audit keys. The reply is {fields, spec or
-- false, progress (flat field/value list), decisions (flat), number of changes, the
-- changes or false (when the caller holds ``known`` of them)}; ``false`` is nil.
local function read_job(with_spec, known)
  local fields = redis.call('HMGET', KEYS[1], 'spec_hash', 'generation', 'version',
    'world_size', 'created_at', 'issued_until', 'resumed_from', 'incarnation', 'run_id',
    'finished_at', 'held_until')
  local spec = false
  if with_spec then spec = redis.call('HGET', KEYS[1], 'spec') end
  local count = redis.call('LLEN', KEYS[4])
  local changes = false
  if count ~= known then changes = redis.call('LRANGE', KEYS[4], 0, -1) end
  return {fields, spec, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3]),
    count, changes}
end

local function write_children(first)
  -- ARGV[first] = number of progress pairs, then those pairs, then decision pairs.
  redis.call('DEL', KEYS[2], KEYS[3])
  local n = tonumber(ARGV[first])
  local i = first + 1
  for _ = 1, n do
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  while i < #ARGV do
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
end
