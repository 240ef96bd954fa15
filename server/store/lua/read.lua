-- (job.lua's read_job and write_children are prepended.)
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return read_job(true, -1)
