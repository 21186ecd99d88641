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
func (b *Bridge) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Connect {
		return pk, nil
	}
	code, answer := checkConnect(pk)
	if code == packets.CodeSuccess {
		return pk, nil
	}
	b.reject("invalid_connect")
	b.log.Info("connection refused", "remote", cl.Net.Remote, "reason", code.Reason)
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
	}
	return packets.CodeSuccess, false
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
