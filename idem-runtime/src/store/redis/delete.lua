-- Removes a record; one that is still processing only when forced. Wakes waiters that
-- asked to be told.
--
-- KEYS[1]  the record
-- ARGV[1]  '1' to remove a processing record too, '0' not to
-- ARGV[2]  the record format version this client writes and reads
--
-- Replies: {'deleted'} | {'not_found'} | {'processing'} | {'corrupt', what}

local key = KEYS[1]
local force, version = ARGV[1] == '1', ARGV[2]

local record, err = load(key, version)
if force then
  -- A forced delete is how an operator clears any record, readable or not.
  if redis.call('DEL', key) == 1 then
    if record then
      notify(key, record.fields)
    end
    return {'deleted'}
  end
  return {'not_found'}
end
if err then
  return err
end
if not record then
  return {'not_found'}
end
if record.fields.st == 'processing' then
  return {'processing'}
end
redis.call('DEL', key)
return {'deleted'}
