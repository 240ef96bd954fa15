-- ARGV: generation, expected number of changes, from_iteration, change, audit entry.
-- (job.lua's read_job and write_children are prepended.)
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local generation = redis.call('HGET', KEYS[1], 'generation')
if tonumber(generation) ~= tonumber(ARGV[1]) then return {'stale', generation} end
local count = redis.call('LLEN', KEYS[4])
if count ~= tonumber(ARGV[2]) then return {'conflict', count} end
-- The earliest start: past every plan handed out and every plan a rank said it holds.
local issued = redis.call('HGET', KEYS[1], 'issued_until')
local held = redis.call('HGET', KEYS[1], 'held_until') or '0'
if tonumber(held) > tonumber(issued) then issued = held end
if tonumber(issued) > tonumber(ARGV[3]) then return {'early', issued} end
redis.call('RPUSH', KEYS[4], ARGV[4])
redis.call('RPUSH', KEYS[5], ARGV[5])
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'finished_at', '0')
return {'ok', read_job(true, -1)}
