local function int(x) return string.format('%.0f', x) end
