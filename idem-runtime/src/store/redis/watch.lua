-- Asks for a change notification: marks a processing record (`w`) so that the completion,
-- failure or release that ends it publishes on 'idem:changed:<key>'. The caller subscribes
-- to that channel before it sends this, so no change after this script is missed.
--
-- KEYS[1]  the record
-- ARGV[1]  the record format version this client writes and reads
--
-- Replies: {'held', remaining_ms} while an owner's lease runs (or, without a lease, until
-- the record expires) | {'changed'} otherwise | {'corrupt', what}

local key = KEYS[1]
local version = ARGV[1]
local now_ms = clock()

local record, err = load(key, version)
if err then
  return err
end
if not record or record.fields.st ~= 'processing' then
  return {'changed'}
end
local f = record.fields
local until_ms = lease_end(key, f, now_ms)
if until_ms ~= nil and until_ms <= now_ms then
  return {'changed'}
end
local remaining
if until_ms == nil then
  local busy = held_until_expiry(key)
  if busy[1] ~= 'busy' then
    return busy
  end
  remaining = busy[2]
else
  remaining = int(until_ms - now_ms)
end
if not f.w then
  f.w = '1'
  redis.call('SET', key, encode(version, f, record.payload), 'KEEPTTL')
end
return {'held', remaining}
