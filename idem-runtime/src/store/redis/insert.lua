-- Writes a record as given, replacing what is there, expiring a TTL from now. For tests
-- and migrations: it bypasses every rule of the protocol.
--
-- KEYS[1]  the record
-- ARGV[1]  the TTL, in milliseconds
-- ARGV[2..] field, value, field, value, ...
--
-- Reply: 'OK'

local key = KEYS[1]
redis.call('DEL', key)
redis.call('HSET', key, unpack(ARGV, 2))
redis.call('PEXPIRE', key, ARGV[1])
return 'OK'
