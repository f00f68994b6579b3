-- Writes a record as given, replacing what is there, expiring a TTL from now. For tests
-- and migrations: it bypasses every rule of the protocol.
--
-- KEYS[1]  the record
-- ARGV[1]  the TTL, in milliseconds
-- ARGV[2]  the record, as GET shows it
--
-- Reply: 'OK'

return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
