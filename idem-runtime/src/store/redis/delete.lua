-- Removes a record; one that is still processing only when forced.
--
-- KEYS[1]  the record
-- ARGV[1]  '1' to remove a processing record too, '0' not to
-- ARGV[2]  the record format version this client writes and reads
--
-- Replies: {'deleted'} | {'not_found'} | {'processing'} | {'corrupt', what}

local key = KEYS[1]
local force, version = ARGV[1] == '1', ARGV[2]

if force then
  -- A forced delete is how an operator clears any record, readable or not.
  if redis.call('DEL', key) == 1 then
    return {'deleted'}
  end
  return {'not_found'}
end

local stored = redis.call('HMGET', key, 'v', 'st')
if not stored[1] and not stored[2] then
  if redis.call('EXISTS', key) == 1 then
    return {'corrupt', 'record without a format version'}
  end
  return {'not_found'}
end
if stored[1] ~= version then
  return {'corrupt', 'format version ' .. tostring(stored[1]) .. ', expected ' .. version}
end
if stored[2] == 'processing' then
  return {'processing'}
end
redis.call('DEL', key)
return {'deleted'}
