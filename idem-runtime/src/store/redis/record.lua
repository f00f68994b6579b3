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

-- The record under `key` as {fields, payload}, nil when there is none, or nil and an error
-- reply when it cannot be read by this format `version`. The first five fields always come
-- in this order, so one anchored match reads them; the few after them are read one by one.
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
  if head_end == nil then
    local tag = string.match(value, '^(%S*)')
    local found = string.match(tag, '^idem(.*)$')
    if found ~= version then
      return nil, {'corrupt', 'format version ' .. (found or tag) .. ', expected ' .. version}
    end
    return nil, {'corrupt', 'the header line is not idem' .. version .. ' st fp tok fence sa ...'}
  end
  local fields = {st = st, fp = fp, tok = tok, fence = fence, sa = sa}
  for name, text in string.gmatch(rest, ' (%w+)=(%S*)') do
    fields[name] = text
  end
  return {fields = fields, payload = string.sub(value, head_end + 1)}
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
