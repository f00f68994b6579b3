-- Extends the lease owned by a token to a lease from now on the server's clock. A lapsed
-- or lost lease is never renewed and a missing record is never recreated.
--
-- KEYS[1]  the record
-- ARGV[1]  the owner token
-- ARGV[2]  the lease, in milliseconds
-- ARGV[3]  the record format version this client writes and reads
--
-- Replies: {'applied', lease_until_ms} | {'lost'} | {'corrupt', what}

local key = KEYS[1]
local token, lease, version = ARGV[1], tonumber(ARGV[2]), ARGV[3]

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local function int(n)
  return string.format('%d', n)
end

local stored = redis.call('HMGET', key, 'v', 'st', 'tok', 'lu')
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
local lease_until = tonumber(stored[4])
if lease_until ~= nil and lease_until <= now_ms then
  return {'lost'}
end

local until_ms = now_ms + lease
redis.call('HSET', key, 'lu', int(until_ms))
redis.call('PEXPIREAT', key, int(until_ms + lease))
return {'applied', int(until_ms)}
