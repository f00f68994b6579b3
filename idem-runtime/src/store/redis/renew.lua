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
local now_ms = clock()

local record, err = load(key, version)
if err then
  return err
end
if not record or record.fields.tok ~= token or record.fields.st ~= 'processing' then
  return {'lost'}
end
local f = record.fields
local until_ms = lease_end(key, f, now_ms)
if until_ms ~= nil and until_ms <= now_ms then
  return {'lost'}
end

until_ms = now_ms + lease
f.lu, f.ls = int(until_ms), nil
redis.call('SET', key, encode(version, f, record.payload), 'PXAT', int(until_ms + lease))
return {'applied', int(until_ms)}
