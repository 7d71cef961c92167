-- The orders both device profile scripts use (profile_upsert.lua, profile_delete.lua): the
-- writer loads each script with this text in front of it.

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
