-- Removes the processing record owned by a token, so the next call runs at once, and wakes
-- waiters that asked to be told.
--
-- KEYS[1]  the record
-- ARGV[1]  the owner token
-- ARGV[2]  the record format version this client writes and reads
--
-- Replies: {'applied', now_ms} | {'lost'} | {'corrupt', what}

local key = KEYS[1]
local token, version = ARGV[1], ARGV[2]
local now_ms = clock()

local record, err = load(key, version)
if err then
  return err
end
if not record or record.fields.tok ~= token or record.fields.st ~= 'processing' then
  return {'lost'}
end

redis.call('DEL', key)
notify(key, record.fields)
return {'applied', int(now_ms)}
