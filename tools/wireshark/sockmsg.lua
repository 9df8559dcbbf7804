-- sockmsg dissector for Wireshark and tshark: the cleartext packet header and the
-- handshake frames (SPEC.md §3, §5, §7.1, §7.6-§7.9). DATA payloads are encrypted and
-- shown as such; sockmsg-dump --keylog decrypts them.
--
-- Use:  wireshark -X lua_script:tools/wireshark/sockmsg.lua capture.pcap
--       tshark -X lua_script:tools/wireshark/sockmsg.lua -r capture.pcap -V
-- or copy it to ~/.local/lib/wireshark/plugins/. UDP ports 7400-7402 (config.yml
-- defaults) are decoded as sockmsg; "Decode As…" adds others.
--
-- Kept in step with SPEC.md by tools/tests/wireshark.rs (runs tshark on the committed
-- capture and checks the fields).

local sockmsg = Proto("sockmsg", "sockmsg")

local packet_types = {
    [0x01] = "INITIAL", [0x02] = "RETRY", [0x03] = "HANDSHAKE",
    [0x04] = "DATA", [0x05] = "REQUEST", [0x06] = "RESPONSE",
}
local frame_types = {
    [0x00] = "PADDING", [0x01] = "PING", [0x02] = "ACK", [0x03] = "CLOSE", [0x04] = "MESSAGE",
    [0x08] = "HANDSHAKE_INIT", [0x09] = "RETRY", [0x0a] = "HANDSHAKE_RESPONSE",
    [0x0b] = "HANDSHAKE_FINISH",
    [0x20] = "LEADER_QUERY", [0x21] = "LEADER_INFO", [0x22] = "NO_LEADER",
    [0x23] = "LEADER_CLAIM", [0x24] = "LEADER_ANNOUNCE", [0x25] = "PROXY_RESULT",
    [0x30] = "KEY_LOOKUP", [0x31] = "KEY_RECORD", [0x32] = "KEY_CHALLENGE_REQUEST",
    [0x33] = "KEY_CHALLENGE", [0x34] = "KEY_REGISTER", [0x35] = "KEY_ROTATE",
    [0x36] = "KEY_RESULT",
}

local f = sockmsg.fields
f.magic = ProtoField.string("sockmsg.magic", "Magic")
f.version = ProtoField.uint8("sockmsg.version", "Version")
f.ptype = ProtoField.uint8("sockmsg.type", "Packet type", base.HEX, packet_types)
f.flags = ProtoField.uint8("sockmsg.flags", "Flags", base.HEX)
f.key_phase = ProtoField.bool("sockmsg.flags.key_phase", "Key phase", 8, nil, 0x01)
f.reserved = ProtoField.uint8("sockmsg.reserved", "Reserved", base.HEX)
f.payload_len = ProtoField.uint16("sockmsg.payload_len", "Payload length")
f.cid = ProtoField.uint64("sockmsg.cid", "Connection ID", base.HEX)
f.pn = ProtoField.uint64("sockmsg.pn", "Packet number")
f.protected = ProtoField.bytes("sockmsg.protected", "Protected payload")
f.frame = ProtoField.uint8("sockmsg.frame", "Frame", base.HEX, frame_types)
f.group = ProtoField.string("sockmsg.group", "Group")
f.initiator = ProtoField.string("sockmsg.initiator", "Initiator")
f.responder = ProtoField.string("sockmsg.responder", "Responder")
f.initiator_cid = ProtoField.uint64("sockmsg.initiator_cid", "Initiator connection ID", base.HEX)
f.responder_cid = ProtoField.uint64("sockmsg.responder_cid", "Responder connection ID", base.HEX)
f.ephemeral = ProtoField.bytes("sockmsg.ephemeral", "X25519 ephemeral key")
f.cookie = ProtoField.bytes("sockmsg.cookie", "Cookie")
f.signature = ProtoField.bytes("sockmsg.signature", "Signature")
f.padding = ProtoField.uint32("sockmsg.padding", "Padding bytes")
f.body = ProtoField.bytes("sockmsg.frame_body", "Frame body")

local HEADER_LEN = 24

-- Reads a Name or Token (u8 length); returns range and next offset, or nil.
local function short_bytes(buf, off, limit)
    if off + 1 > limit then return nil end
    local len = buf(off, 1):uint()
    if off + 1 + len > limit then return nil end
    return buf(off + 1, len), off + 1 + len
end

-- Reads a Signature (u16 length).
local function long_bytes(buf, off, limit)
    if off + 2 > limit then return nil end
    local len = buf(off, 2):uint()
    if off + 2 + len > limit then return nil end
    return buf(off + 2, len), off + 2 + len
end

-- Dissects the cleartext frames of [off, limit); returns a summary.
local function dissect_frames(buf, tree, off, limit)
    local names = {}
    while off < limit do
        local t = buf(off, 1):uint()
        local name = frame_types[t] or string.format("0x%02x", t)
        table.insert(names, name)
        local start = off
        off = off + 1
        local sub = tree:add(f.frame, buf(start, 1))
        if t == 0x00 then
            while off < limit and buf(off, 1):uint() == 0 do off = off + 1 end
            sub:add(f.padding, buf(start, off - start), off - start)
        elseif t == 0x08 then
            local r
            r, off = short_bytes(buf, off, limit); if not r then break end
            sub:add(f.group, r)
            r, off = short_bytes(buf, off, limit); if not r then break end
            sub:add(f.initiator, r)
            if off + 40 > limit then break end
            sub:add(f.initiator_cid, buf(off, 8)); off = off + 8
            sub:add(f.ephemeral, buf(off, 32)); off = off + 32
            r, off = short_bytes(buf, off, limit); if not r then break end
            sub:add(f.cookie, r)
        elseif t == 0x09 then
            local r
            r, off = short_bytes(buf, off, limit); if not r then break end
            sub:add(f.cookie, r)
        elseif t == 0x0a then
            local r
            r, off = short_bytes(buf, off, limit); if not r then break end
            sub:add(f.responder, r)
            if off + 40 > limit then break end
            sub:add(f.responder_cid, buf(off, 8)); off = off + 8
            sub:add(f.ephemeral, buf(off, 32)); off = off + 32
            r, off = long_bytes(buf, off, limit); if not r then break end
            sub:add(f.signature, r)
        elseif t == 0x0b then
            local r
            r, off = long_bytes(buf, off, limit); if not r then break end
            sub:add(f.signature, r)
        else
            -- Proxy and key manager frames: named, body shown raw (sockmsg-dump decodes them).
            if limit > off then sub:add(f.body, buf(off, limit - off)) end
            off = limit
        end
        sub:set_len(off - start)
    end
    return table.concat(names, ", ")
end

function sockmsg.dissector(buf, pinfo, tree)
    local off = 0
    local total = buf:len()
    local infos = {}
    -- A datagram may hold several packets back to back.
    while off + HEADER_LEN <= total do
        if buf(off, 2):string() ~= "SM" then break end
        local payload_len = buf(off + 6, 2):uint()
        local plen = math.min(HEADER_LEN + payload_len, total - off)
        local sub = tree:add(sockmsg, buf(off, plen))
        sub:add(f.magic, buf(off, 2))
        sub:add(f.version, buf(off + 2, 1))
        local ptype = buf(off + 3, 1):uint()
        sub:add(f.ptype, buf(off + 3, 1))
        local flags = sub:add(f.flags, buf(off + 4, 1))
        flags:add(f.key_phase, buf(off + 4, 1))
        sub:add(f.reserved, buf(off + 5, 1))
        sub:add(f.payload_len, buf(off + 6, 2))
        sub:add(f.cid, buf(off + 8, 8))
        sub:add(f.pn, buf(off + 16, 8))
        local name = packet_types[ptype] or string.format("0x%02x", ptype)
        local body = ""
        if ptype == 0x04 then
            sub:add(f.protected, buf(off + HEADER_LEN, plen - HEADER_LEN))
            body = "protected"
        elseif plen > HEADER_LEN then
            body = dissect_frames(buf, sub, off + HEADER_LEN, off + plen)
        end
        sub:append_text(string.format(", %s, cid %s, pn %d", name,
            buf(off + 8, 8):uint64():tohex(), buf(off + 16, 8):uint64():tonumber()))
        table.insert(infos, string.format("%s pn=%d %s", name,
            buf(off + 16, 8):uint64():tonumber(), body))
        off = off + plen
    end
    if #infos == 0 then return 0 end
    pinfo.cols.protocol = "sockmsg"
    pinfo.cols.info = table.concat(infos, " | ")
    return off
end

local udp = DissectorTable.get("udp.port")
for port = 7400, 7402 do udp:add(port, sockmsg) end

-- Any UDP datagram that starts with the magic and version 1.
local function heuristic(buf, pinfo, tree)
    if buf:len() < HEADER_LEN or buf(0, 2):string() ~= "SM" or buf(2, 1):uint() ~= 1 then
        return false
    end
    return sockmsg.dissector(buf, pinfo, tree) > 0
end
sockmsg:register_heuristic("udp", heuristic)
