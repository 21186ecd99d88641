// chat.mjs: imbridge from Node.js with MQTT.js, and nothing of imbridge's.
//
// Needs: Node.js 18+, `npm ci` in this folder, a running mqttd, a token
// (go run ./mqttd token USER).
//
//   node chat.mjs --user alice --peer bob --token "$(go run ./mqttd token alice)"
//   node chat.mjs --url ws://127.0.0.1:8083/mqtt --mqtt 5 --user bob --peer alice --token ...
//
// Then type lines on stdin:
//   type          tell the peer you are typing (online-only {"command":"textInput"})
//   send TEXT     send a stored message {"text": TEXT}
//   history       print the last 10 messages with the peer
//   quit
// Everything that arrives is printed as one JSON object per line:
//   {"event":"message", ...the delivered message...}
//   {"event":"receipt", ...}, {"event":"history", ...}, {"event":"ready"}
import mqtt from 'mqtt';
import readline from 'node:readline';

function flag(name, def) {
  const i = process.argv.indexOf('--' + name);
  return i > 0 ? process.argv[i + 1] : def;
}
const url = flag('url', 'mqtt://127.0.0.1:1883');
const user = flag('user');
const peer = flag('peer');
const token = flag('token');
const version = Number(flag('mqtt', '4')); // 4 = MQTT 3.1.1, 5 = MQTT 5
if (!user || !peer || !token) {
  console.error('usage: node chat.mjs --user ME --peer THEM --token TOKEN [--url URL] [--mqtt 4|5]');
  process.exit(2);
}

const print = (event, body) => console.log(JSON.stringify({ event, ...body }));
let next = 0;
const newId = () => `node-${process.pid}-${++next}`;

const client = mqtt.connect(url, {
  username: user,
  password: token,
  clientId: `node-${process.pid}`,
  protocolVersion: version,
  clean: true,
  reconnectPeriod: 1000,
});

client.on('connect', () => {
  client.subscribe(
    {
      [`users/${user}/inbox`]: { qos: 1 },
      [`$share/${user}/users/${user}/online`]: { qos: 0 },
      [`users/${user}/reply`]: { qos: 1 },
    },
    (err, granted) => {
      const refused = (granted || []).filter((g) => g.qos >= 0x80);
      if (err || refused.length) {
        console.error('subscribe failed', err || refused);
        process.exit(1);
      }
      print('ready', {});
    },
  );
});
client.on('error', (err) => {
  console.error('mqtt error:', err.message);
  if (!client.connected) process.exit(1);
});

client.on('message', (topic, payload) => {
  const body = JSON.parse(payload.toString());
  if (topic.endsWith('/reply')) {
    print(body.type === 'receipt' ? 'receipt' : body.type, body);
  } else {
    print('message', body);
  }
});

const publish = (topic, body) =>
  client.publish(topic, JSON.stringify(body), { qos: 1 }, (err) => err && console.error('publish failed:', err.message));

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const [cmd, ...rest] = line.trim().split(' ');
  if (cmd === 'type') {
    publish(`users/${user}/send`, { to: peer, onlineUserOnly: true, data: { command: 'textInput' }, id: newId() });
  } else if (cmd === 'send') {
    publish(`users/${user}/send`, { to: peer, data: { text: rest.join(' ') }, id: newId() });
  } else if (cmd === 'history') {
    publish(`users/${user}/history`, { with: peer, limit: 10, id: newId() });
  } else if (cmd === 'quit') {
    client.end(false, () => process.exit(0));
  } else if (cmd) {
    console.error('commands: type | send TEXT | history | quit');
  }
});
rl.on('close', () => client.end(false, () => process.exit(0)));
