package protocol

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestValidUserID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"alice", true},
		{"A.b_c@d-9", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"", false},
		{"a/b", false},
		{"a+b", false},
		{"a#", false},
		{"al ice", false},
		{"ünï", false},
		{"a:b", false},
		{"$share", false},
	} {
		if got := ValidUserID(tc.id); got != tc.ok {
			t.Errorf("ValidUserID(%q) = %v, want %v", tc.id, got, tc.ok)
		}
	}
}

func TestParseTopic(t *testing.T) {
	for _, tc := range []struct {
		topic string
		user  string
		kind  TopicKind
	}{
		{"users/alice/send", "alice", TopicSend},
		{"users/alice/inbox", "alice", TopicInbox},
		{"users/alice/online", "alice", TopicOnline},
		{"users/alice/reply", "alice", TopicReply},
		{"users/alice/reply/dev1", "alice", TopicReply},
		{"users/alice/reply/a/b", "alice", TopicReply},
		{"users/alice/history", "alice", TopicHistory},
		{"users/alice/sync", "alice", TopicSync},
		{"users/alice/reply/", "", TopicUnknown},
		{"users/alice/reply/#", "", TopicUnknown},
		{"users/alice/reply/+", "", TopicUnknown},
		{"users/alice/inbox/x", "", TopicUnknown},
		{"users/+/inbox", "", TopicUnknown},
		{"users/#", "", TopicUnknown},
		{"users//inbox", "", TopicUnknown},
		{"users/alice", "", TopicUnknown},
		{"Users/alice/inbox", "", TopicUnknown},
		{"$share/alice/users/alice/online", "", TopicUnknown},
		{"", "", TopicUnknown},
	} {
		user, kind := ParseTopic(tc.topic)
		if user != tc.user || kind != tc.kind {
			t.Errorf("ParseTopic(%q) = %q, %v; want %q, %v", tc.topic, user, kind, tc.user, tc.kind)
		}
	}
}

func TestTopicBuildersRoundTrip(t *testing.T) {
	for kind, build := range map[TopicKind]func(string) string{
		TopicSend: SendTopic, TopicInbox: InboxTopic, TopicOnline: OnlineTopic,
		TopicReply: ReplyTopic, TopicHistory: HistoryTopic, TopicSync: SyncTopic,
	} {
		if u, k := ParseTopic(build("bob.b")); u != "bob.b" || k != kind {
			t.Errorf("ParseTopic(%q) = %q, %v; want bob.b, %v", build("bob.b"), u, k, kind)
		}
	}
	if got := OnlineFilter("bob"); got != "$share/bob/users/bob/online" {
		t.Errorf("OnlineFilter = %q", got)
	}
}

func TestDecodeSendRequest(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload string
		code    ErrorCode
	}{
		{"minimal", `{"to":"bob","data":"hi"}`, ""},
		{"all fields", `{"to":"bob","data":{"command":"textInput"},"onlineUserOnly":true,"id":"c-1","priority":"high"}`, ""},
		{"unknown fields ignored", `{"to":"bob","data":1,"future":{"x":1}}`, ""},
		{"leading space", " \n{\"to\":\"bob\",\"data\":[1]}", ""},
		{"empty", ``, CodeBadJSON},
		{"garbage", `{"to":`, CodeBadJSON},
		{"array", `[1,2]`, CodeNotObject},
		{"string", `"hello"`, CodeNotObject},
		{"wrong type", `{"to":"bob","data":1,"onlineUserOnly":"yes"}`, CodeBadJSON},
		{"missing to", `{"data":1}`, CodeInvalidTo},
		{"bad to", `{"to":"bob/inbox","data":1}`, CodeInvalidTo},
		{"long to", `{"to":"` + strings.Repeat("b", 65) + `","data":1}`, CodeInvalidTo},
		{"no data", `{"to":"bob"}`, CodeMissingData},
		{"null data", `{"to":"bob","data":null}`, CodeMissingData},
		{"bad id", `{"to":"bob","data":1,"id":"has space"}`, CodeInvalidID},
		{"bad priority", `{"to":"bob","data":1,"priority":"urgent"}`, CodeInvalidPriority},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := DecodeSendRequest([]byte(tc.payload))
			if tc.code == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				if r.To != "bob" || r.Priority == "" {
					t.Fatalf("decoded %+v", r)
				}
				return
			}
			if err == nil || err.Code != tc.code {
				t.Fatalf("error = %v, want code %s", err, tc.code)
			}
			if err.Message == "" {
				t.Fatal("error without message")
			}
		})
	}
}

func TestDecodeSendRequestCopiesData(t *testing.T) {
	buf := []byte(`{"to":"bob","data":"abc"}`)
	r, err := DecodeSendRequest(buf)
	if err != nil {
		t.Fatal(err)
	}
	for i := range buf {
		buf[i] = 'x'
	}
	if string(r.Data) != `"abc"` {
		t.Fatalf("data aliased the input: %s", r.Data)
	}
}

func TestHistoryAndSyncRequests(t *testing.T) {
	h, err := DecodeHistoryRequest([]byte(`{"with":"bob"}`))
	if err != nil || h.Limit != DefaultPageLimit {
		t.Fatalf("default limit: %+v %v", h, err)
	}
	for _, bad := range []string{`{"with":"bob","limit":1001}`, `{"with":"bob","limit":-1}`, `{"with":"b/b"}`, `{"with":"bob","before":2,"after":1}`} {
		if _, err := DecodeHistoryRequest([]byte(bad)); err == nil || err.Code != CodeInvalidQuery {
			t.Errorf("%s: error = %v, want invalid_query", bad, err)
		}
	}
	s, err := DecodeSyncRequest([]byte(`{"after":7,"limit":1000}`))
	if err != nil || s.After != 7 || s.Limit != 1000 {
		t.Fatalf("sync: %+v %v", s, err)
	}
}

func TestMessageEncodesIDFirst(t *testing.T) {
	b, err := json.Marshal(Message{ID: "abc", From: "a", To: "b", Data: json.RawMessage(`1`)})
	if err != nil {
		t.Fatal(err)
	}
	id, ok := PeekMessageID(b)
	if !ok || string(id) != "abc" {
		t.Fatalf("PeekMessageID(%s) = %q, %v", b, id, ok)
	}
	for _, bad := range []string{``, `{"to":"x"}`, `{"id":""}`, `{"id":"abc`} {
		if _, ok := PeekMessageID([]byte(bad)); ok {
			t.Errorf("PeekMessageID(%q) accepted", bad)
		}
	}
}

func FuzzDecodeSendRequest(f *testing.F) {
	for _, s := range []string{`{"to":"bob","data":1}`, `{"to":"bob","data":{"a":[1,2]},"onlineUserOnly":true,"id":"x","priority":"low"}`, `[]`, `{`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeSendRequest(b)
		if err != nil {
			if err.Code == "" || err.Message == "" {
				t.Fatalf("error without code or message: %+v", err)
			}
			return
		}
		if !ValidUserID(r.To) || !json.Valid(r.Data) || !r.Priority.valid() || (r.ID != "" && !ValidClientMsgID(r.ID)) {
			t.Fatalf("accepted an invalid request: %+v", r)
		}
	})
}

func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{"users/a/send", "users/a/reply/x", "users/+/inbox", "#", "$share/a/users/a/online"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		user, kind := ParseTopic(topic)
		if kind == TopicUnknown {
			if user != "" {
				t.Fatalf("unknown topic with user %q", user)
			}
			return
		}
		if !ValidUserID(user) || strings.ContainsAny(topic, "+#") || !strings.HasPrefix(topic, "users/"+user+"/") {
			t.Fatalf("ParseTopic(%q) = %q, %v", topic, user, kind)
		}
	})
}

func TestWithUint(t *testing.T) {
	m := Message{ID: "x", From: "a", To: "b", Time: 5, Data: json.RawMessage(`{"k":[1,2]}`)}
	enc, _ := json.Marshal(&m)
	got := WithUint(WithUint(enc, "seq", 7), "inboxSeq", 12)
	var back Message
	if err := json.Unmarshal(got, &back); err != nil || back.Seq != 7 || back.InboxSeq != 12 || back.ID != "x" || string(back.Data) != `{"k":[1,2]}` {
		t.Fatalf("%s -> %+v %v", got, back, err)
	}
	if string(WithUint([]byte(`{}`), "n", 1)) != `{"n":1}` {
		t.Fatal("empty object")
	}
	if id, ok := PeekMessageID(got); !ok || string(id) != "x" {
		t.Fatal("id no longer first")
	}
}

func TestAppendMessageMatchesEncodingJSON(t *testing.T) {
	for _, m := range []Message{
		{ID: "dc3ltrdqmd2u67dtmba0", From: "alice", To: "bob", Time: 1795645165760, Data: json.RawMessage(`{"text":"hi"}`)},
		{ID: "x", From: "a.b@c", To: "d_e-f", OnlineUserOnly: true, Time: -1, Data: json.RawMessage(`[1,"two",null]`), ClientMsgID: "c:1", Priority: PriorityHigh, Seq: 7, InboxSeq: 9},
		{ID: "y", From: "a", To: "b", Data: json.RawMessage(`"\u00e9\n<tag>"`), ClientMsgID: "odd\"id<>&\x01é"},
		{},
	} {
		want, err := json.Marshal(&m)
		if err != nil {
			t.Fatal(err)
		}
		got := AppendMessage(nil, &m)
		// The same document; only data may differ in escaping (json.Marshal
		// HTML-escapes raw messages, AppendMessage copies them).
		var a, b Message
		if err := json.Unmarshal(got, &a); err != nil {
			t.Fatalf("AppendMessage wrote invalid JSON %s: %v", got, err)
		}
		json.Unmarshal(want, &b)
		var da, db any
		json.Unmarshal(a.Data, &da)
		json.Unmarshal(b.Data, &db)
		a.Data, b.Data = nil, nil
		if fmt.Sprint(a) != fmt.Sprint(b) || fmt.Sprint(da) != fmt.Sprint(db) {
			t.Errorf("AppendMessage\n got %s\nwant %s", got, want)
		}
		if m.Data != nil && !strings.Contains(string(want), `\u003c`) && string(got) != string(want) {
			t.Errorf("AppendMessage differs in bytes\n got %s\nwant %s", got, want)
		}
	}
}

func BenchmarkDecodeSendRequest(b *testing.B) {
	in := []byte(`{"to":"bob","onlineUserOnly":true,"data":{"command":"textInput"},"id":"c-1234"}`)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := DecodeSendRequest(in); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeMessage(b *testing.B) {
	m := Message{ID: "dc3ltrdqmd2u67dtmba0", From: "alice", To: "bob", OnlineUserOnly: true, Time: 1795645165760,
		Data: json.RawMessage(`{"command":"textInput"}`), ClientMsgID: "c-1234"}
	b.Run("AppendMessage", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 256)
		for i := 0; i < b.N; i++ {
			buf = AppendMessage(buf[:0], &m)
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := json.Marshal(&m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func FuzzDecodeHistoryRequest(f *testing.F) {
	for _, s := range []string{`{"with":"bob"}`, `{"with":"bob","limit":1000,"before":5}`, `{"after":3}`, `{"limit":1e9}`, `[]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, err := DecodeHistoryRequest(b); err == nil && (!ValidUserID(h.With) || h.Limit < 1 || h.Limit > MaxPageLimit) {
			t.Fatalf("accepted history request %+v", h)
		}
		if s, err := DecodeSyncRequest(b); err == nil && (s.Limit < 1 || s.Limit > MaxPageLimit) {
			t.Fatalf("accepted sync request %+v", s)
		}
	})
}

func TestDataChecks(t *testing.T) {
	for _, tc := range []struct {
		data string
		code ErrorCode
	}{
		{`"plain"`, ""},
		{strings.Repeat("[", 64) + strings.Repeat("]", 64), ""},
		{`{"s":"[[[[ not nesting \" [[["}`, ""},
		{strings.Repeat("[", 65) + strings.Repeat("]", 65), CodeInvalidData},
		{strings.Repeat(`{"a":`, 65) + "1" + strings.Repeat("}", 65), CodeInvalidData},
		{"\"\xff\"", CodeInvalidData},
		{strings.Repeat("[", 10001) + strings.Repeat("]", 10001), CodeBadJSON},
	} {
		_, err := DecodeSendRequest([]byte(`{"to":"bob","data":` + tc.data + `}`))
		if (err == nil && tc.code != "") || (err != nil && err.Code != tc.code) {
			t.Errorf("data %.30s: error %v, want code %q", tc.data, err, tc.code)
		}
	}
}

func TestTypeErrorsNameTheField(t *testing.T) {
	_, err := DecodeSendRequest([]byte(`{"to":5,"data":1}`))
	if err == nil || strings.Contains(err.Message, "SendRequest") || !strings.Contains(err.Message, "to must be a string") {
		t.Fatalf("error %v: want the JSON field named, no Go type", err)
	}
}
