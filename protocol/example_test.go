package protocol_test

import (
	"fmt"

	"github.com/imbridge/imbridge/protocol"
)

func ExampleParseTopic() {
	user, kind := protocol.ParseTopic("users/alice/send")
	fmt.Println(user, kind == protocol.TopicSend)
	_, kind = protocol.ParseTopic("users/+/inbox")
	fmt.Println(kind == protocol.TopicUnknown)
	// Output:
	// alice true
	// true
}

func ExampleDecodeSendRequest() {
	req, err := protocol.DecodeSendRequest([]byte(`{"to":"bob","onlineUserOnly":true,"data":{"command":"textInput"}}`))
	fmt.Println(req.To, req.OnlineUserOnly, string(req.Data), err == nil)
	_, err = protocol.DecodeSendRequest([]byte(`{"to":"bob/inbox","data":1}`))
	fmt.Println(err.Code)
	// Output:
	// bob true {"command":"textInput"} true
	// invalid_to
}
