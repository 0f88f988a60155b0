// Package supervisor starts worker OS processes, monitors them and reports each one's end as an EXIT event.
package supervisor
