-- Claims a key whose record a plain `SET NX GET` found processing (or that callers send
-- here directly): takes over a lapsed lease, or reports what is there. Decided on the
-- server's clock.
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
--   {'finished', record}     the whole record, as GET shows it
--   {'corrupt', what}

local key = KEYS[1]
local token, fingerprint, validate = ARGV[1], ARGV[2], ARGV[3] == '1'
local lease, version = tonumber(ARGV[4]), ARGV[5]
local now_ms, now_us = clock()

local record, err = load(key, version)
if err then
  return err
end
local previous_fence = nil
if record then
  local f = record.fields
  if f.st == 'processing' and f.tok == token then
    -- An earlier try of this very claim landed and its reply was lost.
    local until_ms = f.lu or (f.ls and int(tonumber(f.sa) + tonumber(f.ls))) or int(now_ms)
    return {'acquired', f.fence, until_ms, '0'}
  end
  if validate and f.fp ~= fingerprint then
    return {'mismatch', f.fp or ''}
  end

  if f.st == 'processing' then
    local until_ms = lease_end(key, f, now_ms)
    if until_ms == nil then
      return held_until_expiry(key)
    end
    if until_ms > now_ms then
      return {'busy', int(until_ms - now_ms)}
    end
    previous_fence = tonumber(f.fence)
    if previous_fence == nil then
      return {'corrupt', 'processing record without a fence'}
    end
    -- A takeover's fence must grow, and no fence may pass max_number: a record at the
    -- limit (only ever written by hand) is refused rather than taken over, unchanged.
    if previous_fence >= max_number then
      return {'corrupt', 'field fence is ' .. f.fence .. ', at the 2^53 - 1 limit; ' ..
        'a takeover cannot raise it (delete the record with force to free the key)'}
    end
  elseif f.st == 'completed' or f.st == 'failed' or f.st == 'not_replayable' then
    return {'finished', redis.call('GET', key)}
  else
    return {'corrupt', 'unknown status ' .. tostring(f.st)}
  end
end

local fence = now_us
if previous_fence ~= nil then
  fence = math.max(now_us, previous_fence + 1)
end
local lease_until = now_ms + lease
local fields = {st = 'processing', fp = fingerprint, tok = token, fence = int(fence),
  sa = int(now_ms), lu = int(lease_until)}
-- Kept one lease past its end, so a takeover still sees whose claim it replaces.
redis.call('SET', key, encode(version, fields), 'PXAT', int(lease_until + lease))

local takeover = '0'
if previous_fence ~= nil then
  takeover = '1'
end
return {'acquired', int(fence), int(lease_until), takeover}
