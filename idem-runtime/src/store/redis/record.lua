-- Shared by every script (prepended to each): the server's clock, exact integers, and the
-- record format, one Redis string:
--   'idem2 st=<status> fp=<hex> tok=<token> fence=<us> sa=<ms> [name=value ...]\n<payload>'

-- Lua 5.1 prints large numbers in exponent form; fences and epoch times must stay exact.
local function int(n)
  return string.format('%d', n)
end

-- The server's clock, in milliseconds and microseconds since the epoch.
local function clock()
  local time = redis.call('TIME')
  local s, us = tonumber(time[1]), tonumber(time[2])
  return s * 1000 + math.floor(us / 1000), s * 1000000 + us
end

-- The largest number a numeric field may hold: 2^53 - 1, the last integer a Lua number (a
-- double) holds exactly. Epoch milliseconds, and fences in microseconds, stay far below it.
local max_number = 9007199254740991

-- The fields that hold numbers, and the statuses a record can have.
local number_fields = {'fence', 'sa', 'lu', 'ls', 'ca', 'code', 'hl'}
local statuses = {processing = true, completed = true, failed = true, not_replayable = true}

-- Whether `text` is a whole number this format can hold: decimal digits only (no sign, no
-- exponent, no fraction), at most `max_number`.
local function is_number(text)
  return #text <= 16 and string.find(text, '^%d+$') ~= nil and tonumber(text) <= max_number
end

-- Why a record's fields cannot be trusted, as an error reply, or nil when they can. Every
-- script checks this before it decides or writes anything, so a garbled record is reported
-- as corrupt on every path, never waited on, taken over or rewritten.
local function check(fields, payload)
  if not statuses[fields.st] then
    return {'corrupt', 'unknown status "' .. fields.st .. '"'}
  end
  if #fields.fp ~= 64 or string.find(fields.fp, '%X') then
    return {'corrupt', 'field `fp` is not a 64-digit hex fingerprint'}
  end
  for _, name in ipairs(number_fields) do
    local text = fields[name]
    if text ~= nil and not is_number(text) then
      return {'corrupt', 'field `' .. name .. '` is "' .. text .. '", not a whole number up to 2^53'}
    end
  end
  if fields.st == 'processing' then
    return nil
  end
  if fields.ca == nil then
    return {'corrupt', 'field `ca` is missing'}
  end
  if fields.st == 'not_replayable' then
    return nil
  end
  if fields.code == nil then
    return {'corrupt', 'field `code` is missing'}
  end
  if tonumber(fields.code) > 65535 then
    return {'corrupt', 'status code ' .. fields.code .. ' is out of range'}
  end
  if fields.bt ~= nil and fields.bt ~= 'json' and fields.bt ~= 'bytes' then
    return {'corrupt', 'unknown body type "' .. fields.bt .. '"'}
  end
  if tonumber(fields.hl or '0') > #payload then
    return {'corrupt', 'field `hl` is longer than the payload'}
  end
  return nil
end

-- The record under `key` as {fields, payload}, nil when there is none, or nil and an error
-- reply when it cannot be read by this format `version` or its fields are garbled. The
-- first five fields always come in this order, so one anchored match reads them; the few
-- after them are read one by one.
local function load(key, version)
  local value = redis.pcall('GET', key)
  if value == false then
    return nil
  end
  if type(value) ~= 'string' then
    return nil, {'corrupt', 'not a string record (format version 1 kept records in hashes)'}
  end
  local _, head_end, st, fp, tok, fence, sa, rest = string.find(value,
    '^idem' .. version .. ' st=(%S+) fp=(%S+) tok=(%S+) fence=(%S+) sa=(%S+)([^\n]*)\n')
  -- A control character before the line's end (a CR, a tab) would pass for a space in the
  -- patterns here; the client refuses it, so the scripts must too.
  local line_end = string.find(value, '\n', 1, true) or #value + 1
  local control = (string.find(value, '%c') or line_end) < line_end
  if head_end == nil then
    local tag = string.match(value, '^(%S*)')
    local found = string.match(tag, '^idem(.*)$')
    if found ~= version then
      return nil, {'corrupt', 'format version "' .. (found or tag) .. '", expected ' .. version}
    end
    if control then
      return nil, {'corrupt', 'the header line holds a control character'}
    end
    return nil, {'corrupt', 'the header line is not idem' .. version .. ' st fp tok fence sa ...'}
  end
  if control then
    return nil, {'corrupt', 'the header line holds a control character'}
  end
  local fields = {st = st, fp = fp, tok = tok, fence = fence, sa = sa}
  for name, text in string.gmatch(rest, ' (%w+)=(%S*)') do
    fields[name] = text
  end
  local payload = string.sub(value, head_end + 1)
  local err = check(fields, payload)
  if err then
    return nil, err
  end
  return {fields = fields, payload = payload}
end

-- The end of a processing record's lease on the server's clock: its `lu` field, or for a
-- fresh claim (which carries the lease length `ls` and expires two leases after the claim)
-- one lease before the key expires; nil for a record held until it expires.
local function lease_end(key, fields, now_ms)
  if fields.lu then
    return tonumber(fields.lu)
  end
  if fields.ls then
    return now_ms + redis.call('PTTL', key) - tonumber(fields.ls)
  end
  return nil
end

-- The reply for a processing record without a lease, which is held until it expires: busy
-- for as long as it has left, or corrupt when it never expires (it would hold its key
-- forever, and idem never writes such a record).
local function held_until_expiry(key)
  local left = redis.call('PTTL', key)
  if left < 0 then
    return {'corrupt', 'a processing record without a lease never expires; delete it'}
  end
  return {'busy', int(left)}
end

-- The fields a header line lists, in this order.
local order = {'st', 'fp', 'tok', 'fence', 'sa', 'lu', 'ls', 'w', 'ca', 'code', 'bt', 'hl'}

-- A record's text from its fields and payload.
local function encode(version, fields, payload)
  local parts = {'idem' .. version}
  for _, name in ipairs(order) do
    if fields[name] then
      parts[#parts + 1] = name .. '=' .. fields[name]
    end
  end
  return table.concat(parts, ' ') .. '\n' .. (payload or '')
end

-- Wakes the waiters of other processes, when a waiter marked the record (`w`).
local function notify(key, fields)
  if fields.w then
    redis.call('PUBLISH', 'idem:changed:' .. key, '1')
  end
end
