// Command empty does nothing. relay-bench starts it to measure the floor: the cost of starting
// and waiting for a static Go binary.
package main

func main() {}
