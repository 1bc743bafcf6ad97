awk '$2 == "ERROR"' app.log | wc -l > errors.txt
