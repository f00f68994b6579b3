-- Claims a key: creates a processing record, takes over one whose lease has lapsed, or
-- reports what is there. Decided on the server's clock.
--
-- KEYS[1]  the record
-- ARGV[1]  the caller's owner token
-- ARGV[2]  the caller's fingerprint (hex)
-- ARGV[3]  '1' to refuse a record with another fingerprint, '0' not to
-- ARGV[4]  the lease, in milliseconds
-- ARGV[5]  the record format version this client writes and reads
--
-- Replies, as arrays of strings:
--   {'acquired', fence, lease_until_ms, takeover '1'|'0'}
--   {'busy', remaining_ms}
--   {'mismatch', stored_fingerprint}
--   {'finished', field, value, field, value, ...}   the whole record, so a replay is one call
--   {'corrupt', what}

local key = KEYS[1]
local token, fingerprint, validate = ARGV[1], ARGV[2], ARGV[3] == '1'
local lease, version = tonumber(ARGV[4]), ARGV[5]

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- Lua 5.1 prints large numbers in exponent form; fences and epoch times must stay exact.
local function int(n)
  return string.format('%d', n)
end

local flat = redis.call('HGETALL', key)
local previous_fence = nil
if #flat > 0 then
  local record = {}
  for i = 1, #flat, 2 do
    record[flat[i]] = flat[i + 1]
  end
  if record.v ~= version then
    return {'corrupt', 'format version ' .. tostring(record.v) .. ', expected ' .. version}
  end

  if record.st == 'processing' and record.tok == token then
    -- An earlier try of this very claim landed and its reply was lost.
    return {'acquired', record.fence, record.lu or int(now_ms), '0'}
  end
  if validate and record.fp ~= fingerprint then
    return {'mismatch', record.fp or ''}
  end

  if record.st == 'processing' then
    local lease_until = tonumber(record.lu)
    if lease_until == nil then
      -- Written without a lease: held until the record itself expires.
      local pttl = redis.call('PTTL', key)
      if pttl < 0 then
        pttl = lease
      end
      return {'busy', int(pttl)}
    end
    if lease_until > now_ms then
      return {'busy', int(lease_until - now_ms)}
    end
    previous_fence = tonumber(record.fence)
    if previous_fence == nil then
      return {'corrupt', 'processing record without a fence'}
    end
  elseif record.st == 'completed' or record.st == 'failed' or record.st == 'not_replayable' then
    local reply = {'finished'}
    for i = 1, #flat do
      reply[i + 1] = flat[i]
    end
    return reply
  else
    return {'corrupt', 'unknown status ' .. tostring(record.st)}
  end
end

local fence = now_us
if previous_fence ~= nil then
  fence = math.max(now_us, previous_fence + 1)
end
local lease_until = now_ms + lease

redis.call('DEL', key)
redis.call('HSET', key, 'v', version, 'st', 'processing', 'fp', fingerprint, 'tok', token,
  'fence', int(fence), 'lu', int(lease_until), 'sa', int(now_ms))
-- Kept one lease past its end, so a takeover still sees whose claim it replaces.
redis.call('PEXPIREAT', key, int(lease_until + lease))

local takeover = '0'
if previous_fence ~= nil then
  takeover = '1'
end
return {'acquired', int(fence), int(lease_until), takeover}
