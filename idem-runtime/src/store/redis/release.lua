-- Removes the processing record owned by a token, so the next call runs at once.
--
-- KEYS[1]  the record
-- ARGV[1]  the owner token
-- ARGV[2]  the record format version this client writes and reads
--
-- Replies: {'applied', now_ms} | {'lost'} | {'corrupt', what}

local key = KEYS[1]
local token, version = ARGV[1], ARGV[2]

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local stored = redis.call('HMGET', key, 'v', 'st', 'tok')
local stored_version, stored_status, stored_token = stored[1], stored[2], stored[3]
if not stored_version and not stored_status and not stored_token then
  return {'lost'}
end
if stored_version ~= version then
  return {'corrupt', 'format version ' .. tostring(stored_version) .. ', expected ' .. version}
end
if stored_token ~= token or stored_status ~= 'processing' then
  return {'lost'}
end

redis.call('DEL', key)
return {'applied', string.format('%d', now_ms)}
