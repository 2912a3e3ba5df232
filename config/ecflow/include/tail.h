# Standard ecFlow job trailer: report the task complete.
ecflow_client --complete
trap - 0
exit 0
