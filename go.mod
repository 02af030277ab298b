module github.com/smolbottle/smolbottle

go 1.26
