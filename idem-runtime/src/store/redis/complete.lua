-- Finishes the operation owned by a token: stores its outcome and drops the lease in one
-- step, keeping the record for a TTL counted from now on the server's clock, and wakes
-- waiters that asked to be told.
--
-- KEYS[1]  the record
-- ARGV[1]  the TTL, in milliseconds
-- ARGV[2]  the owner's fresh claim record, empty after a takeover
-- ARGV[3]  the finished record as the client made it: a header line (the format tag, then
--          `st`, `fp`, `tok`, `fence`, `sa`, `ca`, and for 'completed' and 'failed' `code`
--          and, when not the defaults, `bt` and `hl`), then the payload (the headers as a
--          JSON list, if any, then the body; or the reason for 'not_replayable')
--
-- The common case, a record untouched since the owner's claim, is decided ahead of the
-- shared helpers (complete_untouched.lua) and stores ARGV[3] as it is. Below is every other
-- case, which reads the owner token, the outcome and the format version from ARGV[3]'s
-- header line, and writes the record again with `ca` from the server's clock.
--
-- Replies: 1 (the short path: applied at ARGV[3]'s `ca`) | {'applied', now_ms} | {'lost'}
-- | {'corrupt', what}
-- A record already finished under the token answers 'applied' when it holds this very
-- outcome (an earlier try landed), 'lost' otherwise.

local key, ttl, finished = KEYS[1], tonumber(ARGV[1]), ARGV[3]
local _, head_end, version, status, token, rest = string.find(finished,
  '^idem(%d+) st=(%S+) fp=%S+ tok=(%S+) fence=%S+ sa=%S+([^\n]*)\n')
if head_end == nil then
  return {'corrupt', 'the finished record sent has no idem header line'}
end
local sent = {}
for name, text in string.gmatch(rest, ' (%w+)=(%S*)') do
  sent[name] = text
end
local payload = string.sub(finished, head_end + 1)
local now_ms = clock()

local record, err = load(key, version)
if err then
  return err
end
if not record or record.fields.tok ~= token then
  return {'lost'}
end
local f = record.fields

if f.st ~= 'processing' then
  -- An earlier try of this completion landed and its reply was lost, or this is a second,
  -- different finish, which must not pass for stored.
  local same = f.st == status and record.payload == payload
  if same and status ~= 'not_replayable' then
    same = f.code == sent.code and (f.bt or 'json') == (sent.bt or 'json') and
      tonumber(f.hl or '0') == tonumber(sent.hl or '0')
  end
  if same then
    return {'applied', int(now_ms)}
  end
  return {'lost'}
end

-- `bt=json` and `hl=0` are the defaults, which the client leaves out of small records.
local extra = ''
if status ~= 'not_replayable' then
  extra = ' code=' .. sent.code
  if sent.bt then
    extra = extra .. ' bt=' .. sent.bt
  end
  if sent.hl then
    extra = extra .. ' hl=' .. sent.hl
  end
end
local done = 'idem' .. version .. ' st=' .. status .. ' fp=' .. f.fp .. ' tok=' .. f.tok ..
  ' fence=' .. f.fence .. ' sa=' .. f.sa .. ' ca=' .. int(now_ms) .. extra .. '\n' .. payload
redis.call('SET', key, done, 'PX', ttl)
notify(key, f)
return {'applied', int(now_ms)}
