-- Upserts one device profile without ever rolling a field back (docs/architecture.md,
-- "Device profile push"). Runs atomically per device, so concurrent writers cannot interleave.
-- Loaded after profile_order.lua (compare_ints, smallest_wins_order, ...).
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

local version, contact_micros = ARGV[1], ARGV[2]

-- An update not newer than the device's last delete brings nothing back (profile_delete.lua).
local deleted = redis.call('HGET', KEYS[2], 'deleted_at')
if deleted and compare_ints(version, deleted) <= 0 then
  local stored_contact = redis.call('HGET', KEYS[1], 'last_contact')
  local stored_micros = redis.call('HGET', KEYS[2], 'last_contact')
  if stored_contact and stored_micros then return {stored_contact, stored_micros} end
  return {}
end

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
