-- Finishes the operation owned by a token: stores its outcome and drops the lease in one
-- step, keeping the record for a TTL counted from now on the server's clock.
--
-- KEYS[1]  the record
-- ARGV[1]  the owner token
-- ARGV[2]  the outcome status: 'completed', 'failed' or 'not_replayable'
-- ARGV[3]  the TTL, in milliseconds
-- ARGV[4]  the record format version this client writes and reads
-- ARGV[5..] for 'completed' and 'failed': status code, body type, body, headers (JSON)
--           for 'not_replayable': the reason
--
-- Replies: {'applied', now_ms} | {'lost'} | {'corrupt', what}
-- A record already finished under the token answers 'applied' when it holds this very
-- outcome (an earlier try landed), 'lost' otherwise.

local key = KEYS[1]
local token, status, ttl, version = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local function int(n)
  return string.format('%d', n)
end

local stored = redis.call('HMGET', key, 'v', 'st', 'tok')
local stored_version, stored_status, stored_token = stored[1], stored[2], stored[3]
if not stored_version and not stored_status and not stored_token then
  return {'lost'}
end
if stored_version ~= version then
  return {'corrupt', 'format version ' .. tostring(stored_version) .. ', expected ' .. version}
end
if stored_token ~= token then
  return {'lost'}
end
if stored_status ~= 'processing' then
  -- An earlier try of this completion landed and its reply was lost, or this is a second,
  -- different finish, which must not pass for stored.
  local same = false
  if status == stored_status and status == 'not_replayable' then
    same = redis.call('HGET', key, 'why') == ARGV[5]
  elseif status == stored_status then
    local f = redis.call('HMGET', key, 'code', 'bt', 'body', 'hdr')
    same = f[1] == ARGV[5] and f[2] == ARGV[6] and f[3] == ARGV[7] and f[4] == ARGV[8]
  end
  if same then
    return {'applied', int(now_ms)}
  end
  return {'lost'}
end

redis.call('HDEL', key, 'lu')
if status == 'not_replayable' then
  redis.call('HSET', key, 'st', status, 'ca', int(now_ms), 'why', ARGV[5])
else
  redis.call('HSET', key, 'st', status, 'ca', int(now_ms),
    'code', ARGV[5], 'bt', ARGV[6], 'body', ARGV[7], 'hdr', ARGV[8])
end
redis.call('PEXPIREAT', key, int(now_ms + ttl))
return {'applied', int(now_ms)}
