// Package interop holds tests that run third-party MQTT clients against a
// real node: mosquitto_sub/mosquitto_pub with MQTT 3.1.1 and 5. (MQTT.js is
// tested in examples/node, paho.golang's MQTT 5 throughout bridge/.) Tests
// skip when a client is not installed; .ci/run installs them.
package interop
