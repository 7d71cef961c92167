-- Upserts one device profile without ever rolling a field back (docs/architecture.md,
-- "Device profile push"). Runs atomically per device, so concurrent writers cannot interleave.
--
-- KEYS[1]  the device hash: only the fields readers expect
-- KEYS[2]  the companion hash of per-field versions (epoch ms; micros for last_contact)
-- ARGV[1]  the update's version (epoch ms, decimal)
-- ARGV[2]  the update's last contact instant (epoch micros, decimal) or ""
-- ARGV[3..] triples: rule, field, value
--   "text" newest version wins; on equal versions the bytewise greater value
--   "int"  newest version wins; on equal versions the greater number
--   "min"  the smaller number wins, in 64 ms steps (firstaccess, user_declared_on; see
--          smallest_wins_order)
--   "lc"   the later instant (ARGV[2]) wins; on equal instants the bytewise greater text
-- Returns {last_contact text, last_contact micros} as stored afterwards, or {} when unknown.
-- The device hash loses any TTL (the old job kept each device for 24 hours): the service keeps
-- it up to date from now on. Its fields without a version (another writer's) count as older
-- than any update.

-- Bytewise comparison: Lua's `<` on strings follows the server's locale (strcoll).
local function compare_bytes(a, b)
  local length = math.min(#a, #b)
  for i = 1, length do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y and -1 or 1
    end
  end
  if #a == #b then return 0 end
  return #a < #b and -1 or 1
end

-- 2^53: every integer below it is a double, so tonumber is exact there.
local EXACT_DOUBLE_LIMIT = 9007199254740992

-- Numeric comparison of canonical decimal integers of any size (Lua numbers are doubles).
local function compare_ints(a, b)
  local a_negative, b_negative = a:sub(1, 1) == '-', b:sub(1, 1) == '-'
  if a_negative ~= b_negative then
    return a_negative and -1 or 1
  end
  local a_digits = a_negative and a:sub(2) or a
  local b_digits = b_negative and b:sub(2) or b
  local order
  local x, y = tonumber(a_digits), tonumber(b_digits)
  if x < EXACT_DOUBLE_LIMIT and y < EXACT_DOUBLE_LIMIT then
    -- Both converted exactly (a larger number never rounds below 2^53), and this is far
    -- cheaper than the byte loop: every version in ms and every instant in micros before the
    -- year 2255 takes this path.
    order = x == y and 0 or (x < y and -1 or 1)
  elseif #a_digits ~= #b_digits then
    order = #a_digits < #b_digits and -1 or 1
  else
    order = compare_bytes(a_digits, b_digits)
  end
  return a_negative and -order or order
end

local function is_integer(text)
  return text:match('^%-?%d+$') ~= nil
end

-- profile::fields::smallest_wins_order, which Cassandra's cells at `base - step` follow: the
-- smaller 64 ms step (values clamped to [0, 2^42)) wins; within a step the value greater as an
-- unsigned 64-bit number (Cassandra's tie-break between equal cell timestamps). -1: a wins.
local STEP_MS, STEP_CEILING = 64, 4398046511104
local function step(value)
  local number = tonumber(value)
  if number < 0 then return 0 end
  if number >= STEP_CEILING then number = STEP_CEILING - 1 end
  return math.floor(number / STEP_MS)
end
local function smallest_wins_order(a, b)
  local a_step, b_step = step(a), step(b)
  if a_step ~= b_step then return a_step < b_step and -1 or 1 end
  local a_negative, b_negative = a:sub(1, 1) == '-', b:sub(1, 1) == '-'
  if a_negative ~= b_negative then return a_negative and -1 or 1 end
  return -compare_ints(a, b)
end

local version, contact_micros = ARGV[1], ARGV[2]

-- Everything stored for the update's fields (and last_contact, for the answer) in two reads:
-- one HMGET per hash costs far less than one HGET per field.
local names = {}
for i = 4, #ARGV, 3 do table.insert(names, ARGV[i]) end
table.insert(names, 'last_contact')
local stored_values = redis.call('HMGET', KEYS[1], unpack(names))
local stored_orders = redis.call('HMGET', KEYS[2], unpack(names))
local contact, micros = stored_values[#names], stored_orders[#names]

-- Whether (order, value) beats the stored (stored_order, stored), ordered by `order` first.
local function wins(order, value, stored_order, stored, compare_values)
  if not stored_order then return true end
  local by_order = compare_ints(order, stored_order)
  if by_order ~= 0 then return by_order > 0 end
  if not stored then return true end
  return compare_values(value, stored) > 0
end

local fields, versions = {}, {}
for j = 1, #names - 1 do
  local i = 3 * j
  local rule, field, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local stored, stored_order = stored_values[j], stored_orders[j]
  if rule == 'min' then
    -- A stored value that is not a number (another writer's) is replaced.
    if not stored or not is_integer(stored) or smallest_wins_order(value, stored) < 0 then
      table.insert(fields, field)
      table.insert(fields, value)
    end
  else
    local order, compare_values = version, compare_bytes
    if rule == 'lc' then order = contact_micros end
    if rule == 'int' then compare_values = compare_ints end
    if wins(order, value, stored_order, stored, compare_values) then
      table.insert(fields, field)
      table.insert(fields, value)
      table.insert(versions, field)
      table.insert(versions, order)
      if field == 'last_contact' then contact, micros = value, order end
    end
  end
end

if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
if #versions > 0 then redis.call('HSET', KEYS[2], unpack(versions)) end
redis.call('PERSIST', KEYS[1])

if contact and micros then return {contact, micros} end
return {}
