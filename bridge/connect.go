package bridge

import (
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// OnPacketRead checks a CONNECT before mochi does, for what the MQTT specs
// require and mochi v2.7.9 lets through or answers with the wrong code:
// will QoS or retain without the will flag, control characters in the
// client ID, and answers to MQTT 3.1.1 clients in MQTT 5 codes. A refused
// CONNECT gets the CONNACK its protocol version defines (or, where the spec
// says so, none) and the connection is closed. Other packets pass.
//
// After the CONNECT it refuses, with DISCONNECT 0x81 or 0x82 (MQTT 5) or by
// closing the connection (MQTT 3.1.1, which has no server DISCONNECT),
// packets mochi v2.7.9 would accept although the spec calls them malformed
// or a protocol error; see checkPacket.
func (b *Bridge) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Connect {
		code := checkPacket(pk)
		if code == packets.CodeSuccess {
			return pk, nil
		}
		b.reject("protocol_error")
		b.logs.info("connection closed: bad packet", "client", logName([]byte(cl.ID)), "remote", cl.Net.Remote, "reason", code.Reason)
		if cl.Properties.ProtocolVersion == 5 {
			_ = b.srv.DisconnectClient(cl, code)
		}
		cl.Stop(code)
		return pk, code
	}
	code, answer := checkConnect(pk)
	if code == packets.CodeSuccess {
		// Wills are discarded (OnConnect); clear the flags that mochi would
		// otherwise refuse with codes of MQTT 5 only.
		pk.Connect.WillRetain, pk.Connect.WillQos = false, 0
		return pk, nil
	}
	b.reject("invalid_connect")
	b.logs.info("connection refused", "remote", cl.Net.Remote, "reason", code.Reason)
	if answer {
		cl.Properties.ProtocolVersion = pk.ProtocolVersion
		if pk.ProtocolVersion != 5 {
			cl.Properties.ProtocolVersion = 4 // an MQTT 3.x answer for anything not MQTT 5
		}
		_ = b.srv.SendConnack(cl, code, false, nil)
	}
	return pk, packets.ErrRejectPacket
}

// checkConnect returns why a CONNECT must be refused, and whether the spec
// wants a CONNACK for it (MQTT 3.1.1 closes without one on malformed flags).
// mochi maps ErrUnsupportedProtocolVersion and ErrClientIdentifierNotValid to
// the MQTT 3.1.1 return codes 1 and 2 itself.
func checkConnect(pk packets.Packet) (packets.Code, bool) {
	v5 := pk.ProtocolVersion == 5
	name := string(pk.Connect.ProtocolName)
	c := pk.Connect
	switch {
	case !(name == "MQTT" && (pk.ProtocolVersion == 4 || v5)) && !(name == "MQIsdp" && pk.ProtocolVersion == 3):
		return packets.ErrUnsupportedProtocolVersion, true // [MQTT-3.1.2-2]
	case pk.ReservedBit != 0, // [MQTT-3.1.2-3]
		!c.WillFlag && (c.WillQos != 0 || c.WillRetain), // [MQTT-3.1.2-11] [MQTT-3.1.2-13]
		c.WillQos > 2: // [MQTT-3.1.2-14]
		return packets.ErrMalformedPacket, v5
	case !validClientID(c.ClientIdentifier):
		return packets.ErrClientIdentifierNotValid, true
	case !v5 && !c.Clean && c.ClientIdentifier == "":
		return packets.ErrClientIdentifierNotValid, true // [MQTT-3.1.3-8]
	case v5 && pk.Properties.AuthenticationMethod != "":
		return packets.ErrBadAuthenticationMethod, true // [MQTT-4.12.0-1]: only username and password
	case !v5 && pk.FixedHeader.Remaining != connectLength(pk):
		return packets.ErrMalformedPacket, false // bytes after the last field
	}
	return packets.CodeSuccess, false
}

// connectLength returns the remaining length an MQTT 3.x CONNECT of these
// fields has. (An MQTT 5 CONNECT's properties are not kept as read, so its
// length cannot be checked this way.)
func connectLength(pk packets.Packet) int {
	c := pk.Connect
	n := 2 + len(c.ProtocolName) + 1 + 1 + 2 + 2 + len(c.ClientIdentifier)
	if c.WillFlag {
		n += 2 + len(c.WillTopic) + 2 + len(c.WillPayload)
	}
	if c.UsernameFlag {
		n += 2 + len(c.Username)
	}
	if c.PasswordFlag {
		n += 2 + len(c.Password)
	}
	return n
}

// Codes of checkPacket's refusals.
var (
	codeZeroPacketID  = packets.Code{Code: packets.ErrProtocolViolation.Code, Reason: "packet identifier 0"}
	codeRetainHandle3 = packets.Code{Code: packets.ErrProtocolViolation.Code, Reason: "retain handling 3"}
	codePayloadFormat = packets.Code{Code: packets.ErrMalformedPacket.Code, Reason: "payload format indicator other than 0 or 1"}
)

// checkPacket returns why a packet after the CONNECT must end the
// connection: a packet identifier of 0 where one is required
// [MQTT-2.2.1-3], retain handling 3 in a subscription, or a payload format
// indicator other than 0 or 1.
func checkPacket(pk packets.Packet) packets.Code {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		if pk.FixedHeader.Qos > 0 && pk.PacketID == 0 {
			return codeZeroPacketID
		}
		if pk.Properties.PayloadFormatFlag && pk.Properties.PayloadFormat > 1 {
			return codePayloadFormat
		}
	case packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp, packets.Unsubscribe:
		if pk.PacketID == 0 {
			return codeZeroPacketID
		}
	case packets.Subscribe:
		if pk.PacketID == 0 {
			return codeZeroPacketID
		}
		for _, f := range pk.Filters {
			if f.RetainHandling > 2 {
				return codeRetainHandle3
			}
		}
	}
	return packets.CodeSuccess
}

// validClientID accepts UTF-8 without control characters.
func validClientID(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}
