package ipc

// DefaultSocket is the socket path used when neither --socket nor RELAY_SOCKET is given. It sits
// directly in /run, not in a RuntimeDirectory, so that stopping the service does not delete the
// socket a relayd.socket unit owns.
const DefaultSocket = "/run/relayd.sock"

// SocketEnv is the environment variable that overrides DefaultSocket for relayd and echo alike.
const SocketEnv = "RELAY_SOCKET"

// ResolveSocket returns flagValue if set, else the value of RELAY_SOCKET from getenv, else
// DefaultSocket.
func ResolveSocket(flagValue string, getenv func(string) string) string {
	if flagValue != "" {
		return flagValue
	}
	if v := getenv(SocketEnv); v != "" {
		return v
	}
	return DefaultSocket
}
