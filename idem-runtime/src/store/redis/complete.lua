-- Finishes the operation owned by a token: stores its outcome and drops the lease in one
-- step, keeping the record for a TTL counted from now on the server's clock, and wakes
-- waiters that asked to be told.
--
-- KEYS[1]  the record
-- ARGV[1]  the owner token
-- ARGV[2]  the outcome status: 'completed', 'failed' or 'not_replayable'
-- ARGV[3]  the TTL, in milliseconds
-- ARGV[4]  the record format version this client writes and reads
-- ARGV[5..8] for 'completed' and 'failed': status code, body type, headers (a JSON list,
--            or empty for none), body
-- ARGV[5]    for 'not_replayable': the reason
--
-- Replies: {'applied', now_ms} | {'lost'} | {'corrupt', what}
-- A record already finished under the token answers 'applied' when it holds this very
-- outcome (an earlier try landed), 'lost' otherwise.

local key = KEYS[1]
local token, status, ttl, version = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now_ms = clock()

local record, err = load(key, version)
if err then
  return err
end
if not record or record.fields.tok ~= token then
  return {'lost'}
end
local f = record.fields

local payload
if status == 'not_replayable' then
  payload = ARGV[5]
else
  payload = ARGV[7] .. ARGV[8]
end

if f.st ~= 'processing' then
  -- An earlier try of this completion landed and its reply was lost, or this is a second,
  -- different finish, which must not pass for stored.
  local same = f.st == status and record.payload == payload
  if same and status ~= 'not_replayable' then
    same = f.code == ARGV[5] and (f.bt or 'json') == ARGV[6] and tonumber(f.hl or '0') == #ARGV[7]
  end
  if same then
    return {'applied', int(now_ms)}
  end
  return {'lost'}
end

local extra = ''
if status ~= 'not_replayable' then
  -- `bt=json` and `hl=0` are the defaults, left out to keep small records small.
  extra = ' code=' .. ARGV[5]
  if ARGV[6] ~= 'json' then
    extra = extra .. ' bt=' .. ARGV[6]
  end
  if #ARGV[7] > 0 then
    extra = extra .. ' hl=' .. #ARGV[7]
  end
end
local done = 'idem' .. version .. ' st=' .. status .. ' fp=' .. f.fp .. ' tok=' .. f.tok ..
  ' fence=' .. f.fence .. ' sa=' .. f.sa .. ' ca=' .. int(now_ms) .. extra .. '\n' .. payload
redis.call('SET', key, done, 'PX', ttl)
notify(key, f)
return {'applied', int(now_ms)}
