-- The completion script's common case, ahead of the shared helpers so that it does not pay
-- for defining them: the record is byte for byte what this owner's fresh claim wrote
-- (ARGV[5], empty after a takeover). Nobody renewed, marked or took it over since, so the
-- finished record the client made (ARGV[6], finished at ARGV[8] on the client's clock, like
-- the claim's `sa`) is what the general path below would write, and no waiter asked to be
-- told. `pcall`: a key of another type falls through, to be reported as corrupt.
if ARGV[5] ~= '' and redis.pcall('GET', KEYS[1]) == ARGV[5] then
  redis.call('SET', KEYS[1], ARGV[6], 'PX', ARGV[3])
  return {'applied', ARGV[8]}
end
