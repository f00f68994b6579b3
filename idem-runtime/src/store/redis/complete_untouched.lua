-- The completion script's common case, ahead of the shared helpers so that it does not pay
-- for defining them: the record is byte for byte what this owner's fresh claim wrote
-- (ARGV[2], empty after a takeover). Nobody renewed, marked or took it over since, so the
-- finished record the client made (ARGV[3], its `ca` from the client's clock, like
-- the claim's `sa`) is what the general path below would write, and no waiter asked to be
-- told. `pcall`: a key of another type falls through, to be reported as corrupt.
-- Reply: 1, meaning applied at the record's `ca`; an integer, which clients read for less
-- than the general path's tables.
if ARGV[2] ~= '' and redis.pcall('GET', KEYS[1]) == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[1])
  return 1
end
