-- Upserts device profiles without ever rolling a field back (docs/architecture.md, "Device
-- profile push"), several devices per call: the call itself costs 4-5 microseconds however
-- many devices it carries, so the writer sends the devices of one hash slot together. Each
-- device is updated atomically, so concurrent writers cannot interleave. Loaded after profile_order.lua
-- (compare_ints, smallest_wins_order, ...).
--
-- KEYS     per device, in order: its hash (only the fields readers expect), then the companion
--          hash of its per-field versions (epoch ms; micros for last_contact)
-- ARGV     per device, in the order of KEYS:
--   the number N of its fields, its version (epoch ms, decimal), its last contact instant
--   (epoch micros, decimal) or "", then N triples: rule, field, value
--     "text" newest version wins; on equal versions the bytewise greater value
--     "int"  newest version wins; on equal versions the greater number
--     "min"  the smaller number wins, in 64 ms steps (firstaccess, user_declared_on; see
--            smallest_wins_order)
--     "lc"   the later instant wins; on equal instants the bytewise greater text
-- Returns per device {last_contact text, last_contact micros} as stored afterwards, or {} when
-- unknown. A device hash loses any TTL (the old job kept each device for 24 hours): the service
-- keeps it up to date from now on. Its fields without a version (another writer's) count as
-- older than any update. An error (a key that is not a hash) stops the call: the devices before
-- it are written, the writer calls again device by device to find which one is refused.

-- Whether (order, value) beats the stored (stored_order, stored), ordered by `order` first.
local function wins(order, value, stored_order, stored, compare_values)
  if not stored_order then return true end
  local by_order = compare_ints(order, stored_order)
  if by_order ~= 0 then return by_order > 0 end
  if not stored then return true end
  return compare_values(value, stored) > 0
end

-- One device: its fields are ARGV[first + 1 .. first + 3 * count].
local function upsert(device, versions_key, count, version, contact_micros, first)
  -- Everything stored for the update's fields, its last_contact (for the answer) and its last
  -- delete, in two reads: one HMGET per hash costs far less than one HGET per field.
  local names = {}
  for j = 1, count do names[j] = ARGV[first + 3 * j - 1] end
  local contact_at, deleted_at = count + 1, count + 2
  names[contact_at], names[deleted_at] = 'last_contact', 'deleted_at'
  local stored_values = redis.call('HMGET', device, unpack(names))
  local stored_orders = redis.call('HMGET', versions_key, unpack(names))
  local contact, micros = stored_values[contact_at], stored_orders[contact_at]

  -- An update not newer than the device's last delete brings nothing back
  -- (profile_delete.lua).
  local deleted = stored_orders[deleted_at]
  if deleted and compare_ints(version, deleted) <= 0 then
    if contact and micros then return {contact, micros} end
    return {}
  end

  local fields, versions = {}, {}
  for j = 1, count do
    local i = first + 3 * j - 2
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

  if #fields > 0 then redis.call('HSET', device, unpack(fields)) end
  if #versions > 0 then redis.call('HSET', versions_key, unpack(versions)) end
  redis.call('PERSIST', device)

  if contact and micros then return {contact, micros} end
  return {}
end

local answers = {}
local at = 1
for d = 1, #KEYS / 2 do
  local count = tonumber(ARGV[at])
  answers[d] = upsert(KEYS[2 * d - 1], KEYS[2 * d], count, ARGV[at + 1], ARGV[at + 2], at + 2)
  at = at + 3 + 3 * count
end
return answers
