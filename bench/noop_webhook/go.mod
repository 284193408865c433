module kopeck.example/bench/noopwebhook

go 1.25
