-- Deletes one device at a version (a Kafka tombstone; docs/architecture.md, "Deletes"),
-- atomically per device. Loaded after profile_order.lua (compare_ints).
--
-- KEYS[1]  the device hash
-- KEYS[2]  the companion hash of per-field versions
-- ARGV[1]  the delete's version (epoch ms, decimal)
-- ARGV[2..] the fields removed whatever their version: those ordered by their value
--           (firstaccess, user_declared_on, last_contact), as Cassandra deletes their columns
--
-- A field stays only when its recorded version is newer than the delete; a field without a
-- version (another writer's) is removed. The versions hash keeps `deleted_at`, the newest
-- delete, forever: profile_upsert.lua lets no update that is not newer than it bring anything
-- back. A delete not newer than the recorded one changes nothing (it removed less).
-- Returns {} (the upsert's answer of a device without last_contact).

local deleted = ARGV[1]
local known = redis.call('HGET', KEYS[2], 'deleted_at')
if known and compare_ints(known, deleted) >= 0 then return {} end

local always = {}
for i = 2, #ARGV do always[ARGV[i]] = true end

local removed = {}
local fields = redis.call('HKEYS', KEYS[1])
if #fields > 0 then
  local orders = redis.call('HMGET', KEYS[2], unpack(fields))
  for i, field in ipairs(fields) do
    local order = orders[i]
    if always[field] or not order or compare_ints(order, deleted) <= 0 then
      table.insert(removed, field)
    end
  end
end

if #removed > 0 then
  redis.call('HDEL', KEYS[1], unpack(removed))
  redis.call('HDEL', KEYS[2], unpack(removed))
end
redis.call('HSET', KEYS[2], 'deleted_at', deleted)
redis.call('PERSIST', KEYS[1])
return {}
