-- The loader (`citygate datagen`, user citygate) creates and fills the MariaDB departments'
-- databases and nothing else: no global privilege, no other database. The gateways read as
-- citygate_reader (reader.sh), which may only SELECT.
GRANT ALL PRIVILEGES ON `market_regulation`.* TO 'citygate'@'%';
GRANT ALL PRIVILEGES ON `environment`.* TO 'citygate'@'%';
GRANT ALL PRIVILEGES ON `human_resources`.* TO 'citygate'@'%';
