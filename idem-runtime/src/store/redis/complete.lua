-- Finishes the operation owned by a token: stores its outcome and drops the lease in one
-- step, keeping the record for a TTL counted from now on the server's clock, and wakes
-- waiters that asked to be told.
--
-- KEYS[1]  the record
-- ARGV[1]  the owner token
-- ARGV[2]  the outcome status: 'completed', 'failed' or 'not_replayable'
-- ARGV[3]  the TTL, in milliseconds
-- ARGV[4]  the record format version this client writes and reads
-- ARGV[5]  the owner's fresh claim record, empty after a takeover
-- ARGV[6]  the finished record as the client made it: a header line, then the payload
--          (for 'completed' and 'failed' the headers as a JSON list, if any, then the
--          body; for 'not_replayable' the reason)
-- ARGV[7]  the length of that header line, newline included
-- ARGV[8]  when the client finished, epoch milliseconds on its clock
-- ARGV[9..11] for 'completed' and 'failed': status code, body type, length of the headers
--
-- The common case, a record untouched since the owner's claim, is decided ahead of the
-- shared helpers (complete_untouched.lua); below is every other case.
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

local payload = string.sub(ARGV[6], tonumber(ARGV[7]) + 1)

if f.st ~= 'processing' then
  -- An earlier try of this completion landed and its reply was lost, or this is a second,
  -- different finish, which must not pass for stored.
  local same = f.st == status and record.payload == payload
  if same and status ~= 'not_replayable' then
    same = f.code == ARGV[9] and (f.bt or 'json') == ARGV[10] and tonumber(f.hl or '0') == tonumber(ARGV[11])
  end
  if same then
    return {'applied', int(now_ms)}
  end
  return {'lost'}
end

local extra = ''
if status ~= 'not_replayable' then
  -- `bt=json` and `hl=0` are the defaults, left out to keep small records small.
  extra = ' code=' .. ARGV[9]
  if ARGV[10] ~= 'json' then
    extra = extra .. ' bt=' .. ARGV[10]
  end
  if ARGV[11] ~= '0' then
    extra = extra .. ' hl=' .. ARGV[11]
  end
end
local done = 'idem' .. version .. ' st=' .. status .. ' fp=' .. f.fp .. ' tok=' .. f.tok ..
  ' fence=' .. f.fence .. ' sa=' .. f.sa .. ' ca=' .. int(now_ms) .. extra .. '\n' .. payload
redis.call('SET', key, done, 'PX', ttl)
notify(key, f)
return {'applied', int(now_ms)}
